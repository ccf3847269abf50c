"""The stages: fold -> export -> (quantize, in calibration/) -> validate -> benchmark, planned and run by build.

build writes the report (reports/) and applies the gates (gates/) inside its staged output folder.
"""
