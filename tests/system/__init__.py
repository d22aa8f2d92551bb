"""Whole runs, marked ``slow`` (tests/system/conftest.py): fault run and matrix, Sentinel, image."""
