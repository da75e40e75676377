"""The queue's hot statements, per database vendor: claiming due jobs,
inserting jobs, completing jobs. Everything else goes through the ORM."""

SUPPORTED_VENDORS = ("postgresql", "mysql", "sqlite")
