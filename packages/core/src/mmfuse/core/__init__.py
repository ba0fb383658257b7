"""mmfuse.core."""
