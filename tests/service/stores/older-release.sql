-- The job store of an older release still (trainer/service/store.py at 3c4350c: no jobs.dataset_version, no dataset_versions), written by its own Store: one job succeeded, one interrupted, one queued; a dataset. Paths under /srv/trainer are the writing machine's.
BEGIN TRANSACTION;
CREATE TABLE datasets (
	id VARCHAR(64) NOT NULL, 
	name VARCHAR(255) NOT NULL, 
	recipe VARCHAR(64) NOT NULL, 
	path TEXT NOT NULL, 
	classes TEXT NOT NULL, 
	images INTEGER NOT NULL, 
	bytes INTEGER NOT NULL, 
	sha256 VARCHAR(64) NOT NULL, 
	owner VARCHAR(32) NOT NULL, 
	created_at FLOAT NOT NULL, 
	PRIMARY KEY (id)
);
INSERT INTO "datasets" VALUES('0123456789abcdef','photos.zip','folder','/srv/trainer/state/datasets/0123456789abcdef/photos','{"cats":2,"dogs":1}',3,1234,'0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef','67e95073ea7d2f92',1.79665187179478478434e+09);
CREATE TABLE job_events (
	id INTEGER NOT NULL, 
	job_id INTEGER NOT NULL, 
	seq INTEGER NOT NULL, 
	kind VARCHAR(32) NOT NULL, 
	data TEXT NOT NULL, 
	at FLOAT NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (job_id, seq), 
	FOREIGN KEY(job_id) REFERENCES jobs (id) ON DELETE CASCADE
);
INSERT INTO "job_events" VALUES(1,1,1,'state','{"state":"queued"}',1.79665187178363060954e+09);
INSERT INTO "job_events" VALUES(2,1,2,'state','{"state":"running","devices":"cpu"}',1.79665187178743171684e+09);
INSERT INTO "job_events" VALUES(3,1,3,'run_started','{"run_dir":"/srv/trainer/runs/mnist_sample/20260101-120000"}',1.79665187178891563412e+09);
INSERT INTO "job_events" VALUES(4,1,4,'epoch','{"row":{"epoch":1,"train_loss":0.7,"valid_loss":0.69,"error_rate":0.5}}',1.79665187178949546818e+09);
INSERT INTO "job_events" VALUES(5,1,5,'finished','{"run_dir":"/srv/trainer/runs/mnist_sample/20260101-120000"}',1.79665187178981089598e+09);
INSERT INTO "job_events" VALUES(6,1,6,'state','{"state":"succeeded"}',1.79665187179034972191e+09);
INSERT INTO "job_events" VALUES(7,2,1,'state','{"state":"queued"}',1.7966518717914147377e+09);
INSERT INTO "job_events" VALUES(8,2,2,'state','{"state":"running","devices":"cpu"}',1.79665187179226207734e+09);
INSERT INTO "job_events" VALUES(9,2,3,'state','{"state":"interrupted"}',1.79665187179340338705e+09);
INSERT INTO "job_events" VALUES(10,3,1,'state','{"state":"queued"}',1.79665187179403495793e+09);
CREATE TABLE jobs (
	id INTEGER NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	command VARCHAR(16) NOT NULL, 
	recipe VARCHAR(64) NOT NULL, 
	options TEXT NOT NULL, 
	data TEXT, 
	dataset VARCHAR(64), 
	nproc INTEGER NOT NULL, 
	owner VARCHAR(32) NOT NULL, 
	run_dir TEXT, 
	created_at FLOAT NOT NULL, 
	started_at FLOAT, 
	ended_at FLOAT, 
	attempts INTEGER NOT NULL, 
	failures INTEGER NOT NULL, 
	error TEXT, 
	stop VARCHAR(16), 
	lease_owner VARCHAR(128), 
	lease_expires FLOAT, 
	pid INTEGER, 
	devices VARCHAR(64), 
	events_read INTEGER NOT NULL, 
	last_seq INTEGER NOT NULL, 
	PRIMARY KEY (id)
);
INSERT INTO "jobs" VALUES(1,'succeeded','fit','mnist_sample','{"arch":"test_resnet","pretrained":false,"epochs":1,"bs":8,"interpret":false}','/srv/trainer/data/mnist_sample',NULL,1,'67e95073ea7d2f92','/srv/trainer/runs/mnist_sample/20260101-120000',1.79665187178363060954e+09,1.79665187178743171684e+09,1.79665187179034972191e+09,1,0,NULL,NULL,NULL,NULL,NULL,'cpu',300,6);
INSERT INTO "jobs" VALUES(2,'interrupted','fit','mnist_sample','{"arch":"test_resnet","pretrained":false,"epochs":1,"bs":8,"interpret":false}','/srv/trainer/data/mnist_sample',NULL,1,'67e95073ea7d2f92',NULL,1.7966518717914147377e+09,1.79665187179226207734e+09,1.79665187179340338705e+09,1,0,NULL,NULL,NULL,NULL,NULL,'cpu',0,3);
INSERT INTO "jobs" VALUES(3,'queued','fit','mnist_sample','{"arch":"test_resnet","pretrained":false,"epochs":1,"bs":8,"interpret":false}','/srv/trainer/data/mnist_sample',NULL,1,'67e95073ea7d2f92',NULL,1.79665187179403495793e+09,NULL,NULL,0,0,NULL,NULL,NULL,NULL,NULL,NULL,0,1);
CREATE INDEX ix_jobs_state_id ON jobs (state, id);
CREATE INDEX ix_jobs_state ON jobs (state);
CREATE INDEX ix_jobs_recipe ON jobs (recipe);
COMMIT;
