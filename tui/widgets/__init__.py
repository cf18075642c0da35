"""Widgets the screens are built from: form fields, curves, dashboard panels."""
