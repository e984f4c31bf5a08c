"""What the tests, benchmarks, tools and the toy model share, imported as ``tests.support.<name>`` from the repository
root: ``hostsim`` (an attn1 host around a random-weight U-Net, and the recorded host traces), ``fakehost`` (fake
``modules``/``backend``/``ldm_patched`` packages for the entry script), ``faultkit`` (tiny references and store
checks for the fault tests) and ``refdrop_harness`` (Save and Use on a hostsim U-Net)."""
