"""The sans-IO core: events and the current time in, commands out. No I/O, no clock reads."""
