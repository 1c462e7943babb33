"""The models a server serves: their configuration, how each is loaded, and the registry that
hands the service a detector per request (and swaps in new versions on reload)."""
