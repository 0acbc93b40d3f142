"""Sample images shipped in the wheel; ``README.md`` gives each file's origin and licence."""
