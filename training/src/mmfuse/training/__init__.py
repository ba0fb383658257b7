"""mmfuse.training: Lightning stages, data modules, callbacks and the `mmfuse` CLI."""
