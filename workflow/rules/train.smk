# train stage.
