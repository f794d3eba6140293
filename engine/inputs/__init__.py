"""What the user gives: the manifest and the checks of user-given paths and addresses."""
