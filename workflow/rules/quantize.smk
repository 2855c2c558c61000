# quantize stage.
