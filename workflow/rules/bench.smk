# bench stage.
