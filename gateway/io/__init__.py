"""The asyncio shell: terminal listener, acquirer links, timers."""
