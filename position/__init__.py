"""position package."""
