_instruments = ("autogen-agentchat >= 0.7.5", "autogen-core >= 0.7.5")
