"""Live device state in Redis: the heartbeat store and the device cache."""
