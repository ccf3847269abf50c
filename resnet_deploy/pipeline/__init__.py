"""The stages: fold -> export -> (quantize) -> validate -> benchmark -> report."""
