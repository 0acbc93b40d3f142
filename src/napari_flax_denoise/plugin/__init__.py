"""The napari plugin: thin widgets over the GUI-free core (no numerics here)."""
