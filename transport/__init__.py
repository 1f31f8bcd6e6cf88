"""Kafka plumbing shared by the worker, the producer library and the lifecycle commands.

Connection settings and the options every aiokafka client takes (`connection`), the narrow
typed seams the rest of the code talks to instead of aiokafka's classes (`seams`), reading a
topic from its beginning to its end (`reading`), and creating topics (`admin`).
"""
