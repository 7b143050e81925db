__version__ = "0.1.0"

# The mark nfit writes into every file it renders (PNG and audio "software", JPEG and
# video comment), so that a later run can tell its own output, which it may replace,
# from a user's file, which it must not.
SOFTWARE_NAME = "nfit"
SOFTWARE = f"{SOFTWARE_NAME} {__version__}"
