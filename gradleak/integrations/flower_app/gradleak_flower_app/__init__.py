"""A Flower app (message API, Flower 1.41) whose server attacks every client update with gradleak."""
