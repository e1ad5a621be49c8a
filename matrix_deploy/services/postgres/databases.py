"""The deployment's databases, each owned by the role of the same name, and how each is created (Synapse's in UTF8
with C collation, from template0): the roles' SQL and the restore of a backup create them alike."""

DATABASES = {
    "synapse": "ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0",
    "mas": "ENCODING 'UTF8' TEMPLATE template0",
}
