# report stage.
