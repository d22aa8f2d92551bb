"""Against a real redis-server and the simulator; the worker in process or as a process."""
