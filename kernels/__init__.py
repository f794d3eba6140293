"""Pure compute kernels (numpy or cupy); never imports engine."""
