"""The ``thumbnail-ml`` command line and the settings shared by every part of the application."""
