"""mmfuse.vision."""
