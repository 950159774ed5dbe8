"""Captured traffic: read pcap/pcapng, replay it, compare."""
