"""The whole study: its plan of steps, their order, and the engine that runs them."""
