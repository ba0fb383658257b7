"""mmfuse.video."""
