"""gunctl's core: data, model and training. Knows nothing of Typer or Rich."""
