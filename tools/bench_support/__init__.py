"""Helpers shared by the bench tools beside this folder (imported by name: a script's folder is on sys.path)."""
