-- Label Studio's own database on the same server, owned by the same ordinary role.
CREATE DATABASE label_studio OWNER ls_backend;
