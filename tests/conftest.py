"""Shared pytest set-up. Plugins with fixtures that start real components live beside this file."""
