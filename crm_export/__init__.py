"""crm-export: resilient export of SQL records into Salesforce."""

__version__ = "0.1.0"
