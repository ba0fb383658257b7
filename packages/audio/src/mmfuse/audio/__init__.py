"""mmfuse.audio."""
