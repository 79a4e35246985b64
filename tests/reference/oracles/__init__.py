"""One module per family of fixtures; generate.py imports every module here."""
