"""`nextbest console`: a read-only web console over a work directory, for marketers and risk officers.

Pages: overview (the last period in words, weekly trends, uplift and the monitor's verdict),
campaigns (plans, contacts against capacity, responses, uplift), customer portrait (looked up by
the pseudonym of the typed id), decisions (paged search of the log) and models and data (registry
and drift). Nothing here writes to the work directory: the event log is read through its read-only
reader, the model registry through MLflow's client, and the files the other stages wrote as they are.
"""
