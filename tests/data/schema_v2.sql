CREATE TABLE schema_info (
	id INTEGER NOT NULL, 
	version INTEGER NOT NULL, 
	PRIMARY KEY (id)
);
CREATE TABLE users (
	id INTEGER NOT NULL, 
	platform VARCHAR(32) NOT NULL, 
	platform_user_id VARCHAR(64) NOT NULL, 
	display_name VARCHAR(255) NOT NULL, 
	timezone VARCHAR(64) NOT NULL, 
	mood_logging BOOLEAN NOT NULL, 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (id), 
	CONSTRAINT uq_users_platform_user UNIQUE (platform, platform_user_id)
);
CREATE TABLE chats (
	id INTEGER NOT NULL, 
	platform VARCHAR(32) NOT NULL, 
	platform_chat_id VARCHAR(64) NOT NULL, 
	is_private BOOLEAN NOT NULL, 
	owner_user_id INTEGER, 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (id), 
	CONSTRAINT uq_chats_platform_chat UNIQUE (platform, platform_chat_id), 
	FOREIGN KEY(owner_user_id) REFERENCES users (id) ON DELETE CASCADE
);
CREATE TABLE messages (
	id INTEGER NOT NULL, 
	user_id INTEGER NOT NULL, 
	chat_id INTEGER NOT NULL, 
	role VARCHAR(16) NOT NULL, 
	text TEXT, 
	status VARCHAR(16) NOT NULL, 
	in_history BOOLEAN NOT NULL, 
	reply_to_id INTEGER, 
	created_at DATETIME NOT NULL, 
	platform_message_id VARCHAR(64), 
	PRIMARY KEY (id), 
	FOREIGN KEY(user_id) REFERENCES users (id) ON DELETE CASCADE, 
	FOREIGN KEY(chat_id) REFERENCES chats (id) ON DELETE CASCADE, 
	FOREIGN KEY(reply_to_id) REFERENCES messages (id) ON DELETE SET NULL
);
CREATE INDEX ix_messages_status ON messages (status);
CREATE INDEX ix_messages_user_chat ON messages (user_id, chat_id, id);
CREATE TABLE mood_entries (
	id INTEGER NOT NULL, 
	user_id INTEGER NOT NULL, 
	chat_id INTEGER, 
	message_id INTEGER, 
	label VARCHAR(16) NOT NULL, 
	score FLOAT NOT NULL, 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (id), 
	FOREIGN KEY(user_id) REFERENCES users (id) ON DELETE CASCADE, 
	FOREIGN KEY(chat_id) REFERENCES chats (id) ON DELETE SET NULL, 
	FOREIGN KEY(message_id) REFERENCES messages (id) ON DELETE SET NULL
);
CREATE INDEX ix_mood_entries_user_time ON mood_entries (user_id, created_at);
INSERT INTO schema_info (id, version) VALUES (1, 2);
