"""Turning Label Studio annotations into a dataset and training the thumbnail CNN."""
