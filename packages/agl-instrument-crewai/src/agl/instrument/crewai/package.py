_instruments = ("crewai >= 1.0",)
