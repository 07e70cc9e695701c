"""HTTP routes, thin: each validates, authenticates and hands over to the relay."""
