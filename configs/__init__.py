"""Default configs that ship with the package; `nextbest init` copies them into a project."""
