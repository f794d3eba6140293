"""The PACS side: DIMSE associations and addresses, and `sarco fetch`."""
