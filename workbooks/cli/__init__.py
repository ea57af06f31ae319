"""The wbx command line."""
