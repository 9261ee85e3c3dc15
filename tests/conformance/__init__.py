"""Protocol conformance suite: black-box checks any receiver implementation can be run against
through a small driver (driver.py). See docs/conformance.md."""
