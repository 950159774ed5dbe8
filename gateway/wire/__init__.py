"""The wire: framing, dialects and the codec. Pure functions and classes, no I/O."""
