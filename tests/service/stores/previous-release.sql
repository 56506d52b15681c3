-- The job store of the previous release (trainer/service/store.py at 489ca73, before Alembic), written by its own Store: one job succeeded, one interrupted, one queued; a dataset and its version 2. Paths under /srv/trainer are the writing machine's.
BEGIN TRANSACTION;
CREATE TABLE dataset_versions (
	id INTEGER NOT NULL, 
	dataset_id VARCHAR(64) NOT NULL, 
	version INTEGER NOT NULL, 
	parent INTEGER NOT NULL, 
	changes TEXT NOT NULL, 
	path TEXT NOT NULL, 
	classes TEXT NOT NULL, 
	images INTEGER NOT NULL, 
	owner VARCHAR(32) NOT NULL, 
	created_at FLOAT NOT NULL, 
	note TEXT, 
	PRIMARY KEY (id), 
	UNIQUE (dataset_id, version)
);
INSERT INTO "dataset_versions" VALUES(1,'0123456789abcdef',2,1,'[{"path":"cats/a.png","action":"delete"}]','/srv/trainer/state/datasets/0123456789abcdef/.versions/2','{"cats":1,"dogs":1}',2,'67e95073ea7d2f92',1.79665187152912187579e+09,'one out');
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
INSERT INTO "datasets" VALUES('0123456789abcdef','photos.zip','folder','/srv/trainer/state/datasets/0123456789abcdef/photos','{"cats":2,"dogs":1}',3,1234,'0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef','67e95073ea7d2f92',1.79665187152797985073e+09);
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
INSERT INTO "job_events" VALUES(1,1,1,'state','{"state":"queued"}',1.79665187151606965069e+09);
INSERT INTO "job_events" VALUES(2,1,2,'state','{"state":"running","devices":"cpu"}',1.79665187151963543889e+09);
INSERT INTO "job_events" VALUES(3,1,3,'run_started','{"run_dir":"/srv/trainer/runs/mnist_sample/20260101-120000"}',1.79665187152098798748e+09);
INSERT INTO "job_events" VALUES(4,1,4,'epoch','{"row":{"epoch":1,"train_loss":0.7,"valid_loss":0.69,"error_rate":0.5}}',1.79665187152154350288e+09);
INSERT INTO "job_events" VALUES(5,1,5,'finished','{"run_dir":"/srv/trainer/runs/mnist_sample/20260101-120000"}',1.79665187152185153963e+09);
INSERT INTO "job_events" VALUES(6,1,6,'state','{"state":"succeeded"}',1.7966518715223789215e+09);
INSERT INTO "job_events" VALUES(7,2,1,'state','{"state":"queued"}',1.79665187152344679828e+09);
INSERT INTO "job_events" VALUES(8,2,2,'state','{"state":"running","devices":"cpu"}',1.79665187152534461018e+09);
INSERT INTO "job_events" VALUES(9,2,3,'state','{"state":"interrupted"}',1.7966518715264480114e+09);
INSERT INTO "job_events" VALUES(10,3,1,'state','{"state":"queued"}',1.79665187152722096441e+09);
CREATE TABLE jobs (
	id INTEGER NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	command VARCHAR(16) NOT NULL, 
	recipe VARCHAR(64) NOT NULL, 
	options TEXT NOT NULL, 
	data TEXT, 
	dataset VARCHAR(64), 
	dataset_version INTEGER, 
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
INSERT INTO "jobs" VALUES(1,'succeeded','fit','mnist_sample','{"arch":"test_resnet","pretrained":false,"epochs":1,"bs":8,"interpret":false}','/srv/trainer/data/mnist_sample',NULL,NULL,1,'67e95073ea7d2f92','/srv/trainer/runs/mnist_sample/20260101-120000',1.79665187151606965069e+09,1.79665187151963543889e+09,1.7966518715223789215e+09,1,0,NULL,NULL,NULL,NULL,NULL,'cpu',300,6);
INSERT INTO "jobs" VALUES(2,'interrupted','fit','mnist_sample','{"arch":"test_resnet","pretrained":false,"epochs":1,"bs":8,"interpret":false}','/srv/trainer/data/mnist_sample',NULL,NULL,1,'67e95073ea7d2f92',NULL,1.79665187152344679828e+09,1.79665187152534461018e+09,1.7966518715264480114e+09,1,0,NULL,NULL,NULL,NULL,NULL,'cpu',0,3);
INSERT INTO "jobs" VALUES(3,'queued','fit','mnist_sample','{"arch":"test_resnet","pretrained":false,"epochs":1,"bs":8,"interpret":false}','/srv/trainer/data/mnist_sample',NULL,NULL,1,'67e95073ea7d2f92',NULL,1.79665187152722096441e+09,NULL,NULL,0,0,NULL,NULL,NULL,NULL,NULL,NULL,0,1);
CREATE INDEX ix_jobs_state ON jobs (state);
CREATE INDEX ix_jobs_state_id ON jobs (state, id);
CREATE INDEX ix_jobs_recipe ON jobs (recipe);
COMMIT;
