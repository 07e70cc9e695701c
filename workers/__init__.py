"""Workers: pull requests by free capacity, run them on a model backend, stream frames back."""
