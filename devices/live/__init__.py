"""Live device state in Redis: shared plumbing (redis), the heartbeat store (heartbeats), the device cache (devcache)."""
