# data stage.
