"""PS3.15 de-identification: the profile, the keyed UIDs and date shifts, the data set rewrite."""
