"""Corpus adapters: each corpus's layout and naming rules, on generated audio in tmp folders."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
import soundfile as sf

from affectflow.config import CorpusSpec
from affectflow.contracts.manifest import CANONICAL_LABELS, ManifestError
from affectflow.corpora import ADAPTERS, get_adapter
from affectflow.corpora.demo import utterance

SR = 16000
CLIP_S = 0.5


def write_clip(path: Path, emotion: str = "neutral", speaker: int = 1, seed: int = 0,
               sr: int = SR, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, utterance(emotion, speaker, seed, sr, CLIP_S), sr, format=fmt)
    return path


def by_id(utts):
    return {u.utt_id: u for u in utts}


# --------------------------------------------------------------------------- registry
def test_every_configurable_adapter_is_registered_and_importable():
    allowed = set(typing.get_args(CorpusSpec.model_fields["adapter"].annotation))
    assert allowed == set(ADAPTERS)
    for name in ADAPTERS:
        assert callable(get_adapter(name))
    with pytest.raises(KeyError, match="unknown corpus adapter 'nope'"):
        get_adapter("nope")


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_missing_root_is_file_not_found(tmp_path, name):
    with pytest.raises(FileNotFoundError, match="missing"):
        get_adapter(name)(str(tmp_path / "missing"))


# --------------------------------------------------------------------------- RAVDESS / EmoDB
def test_ravdess_and_emodb_names(tmp_path):
    rav = tmp_path / "ravdess"
    write_clip(rav / "Actor_02" / "03-01-02-01-01-01-02.wav")
    write_clip(rav / "Actor_02" / "._03-01-02-01-01-01-02.wav").write_bytes(b"\0" * 10)  # macOS fork
    (u,) = get_adapter("ravdess")(str(rav))
    assert (u.speaker, u.gender, u.label) == ("02", "female", "calm")
    write_clip(rav / "Actor_02" / "03-01-09-01-01-01-02.wav")
    with pytest.raises(ValueError, match=r"03-01-09-01-01-01-02\.wav.*'09'"):
        get_adapter("ravdess")(str(rav))

    emo = tmp_path / "emodb"
    write_clip(emo / "Angry" / "03a01Wa.wav")  # class folders: label still from the name
    write_clip(emo / "Angry" / "08b02Tc.wav")
    utts = by_id(get_adapter("emodb")(str(emo)))
    assert (utts["03a01Wa"].label, utts["03a01Wa"].gender) == ("angry", "male")
    assert (utts["08b02Tc"].label, utts["08b02Tc"].gender, utts["08b02Tc"].speaker) == ("sad", "female", "08")
    write_clip(emo / "09a01Qa.wav")
    with pytest.raises(ValueError, match=r"09a01Qa\.wav.*'Q'"):
        get_adapter("emodb")(str(emo))


# --------------------------------------------------------------------------- CREMA-D
CREMA_CODES = {"ANG": "angry", "DIS": "disgust", "FEA": "fearful", "HAP": "happy", "NEU": "neutral", "SAD": "sad"}


def make_crema(root: Path, actors=(1001, 1002, 1003), demographics: bool = True) -> Path:
    for i, actor in enumerate(actors):
        for j, (code, emo) in enumerate(CREMA_CODES.items()):
            level = "XX" if j % 2 else "HI"
            write_clip(root / "AudioWAV" / f"{actor}_DFA_{code}_{level}.wav", emo, i, seed=j)
        # The official repository ships MP3 copies of every clip; they must not double the corpus.
        write_clip(root / "AudioMP3" / f"{actor}_DFA_ANG_HI.mp3", "angry", i, fmt="MP3")
    if demographics:
        (root / "VideoDemographics.csv").write_text(
            "ActorID,Age,Sex,Race,Ethnicity\n1001,51,Male,Caucasian,Not Hispanic\n"
            "1002,21,Female,Caucasian,Not Hispanic\n")
    return root


def test_crema_d_layout_labels_and_demographics(tmp_path):
    root = make_crema(tmp_path / "crema")
    utts = get_adapter("crema_d")(str(root))
    assert len(utts) == 3 * 6  # AudioMP3 copies ignored
    assert all(Path(u.path).parent.name == "AudioWAV" for u in utts)
    ids = by_id(utts)
    for code, emo in CREMA_CODES.items():
        assert ids[f"1001_DFA_{code}_{'HI' if code in ('ANG', 'FEA', 'NEU') else 'XX'}"].label == emo
    genders = {u.speaker: u.gender for u in utts}
    assert genders == {"1001": "male", "1002": "female", "1003": ""}  # 1003 is not in the CSV
    assert ids["1002_DFA_SAD_XX"].extra == {"sentence": "DFA", "intensity": "XX"}


def test_crema_d_without_demographics_has_unknown_gender(tmp_path):
    root = make_crema(tmp_path / "crema", demographics=False)
    assert {u.gender for u in get_adapter("crema_d")(str(root))} == {""}


def test_crema_d_flat_folder_and_bad_codes(tmp_path):
    root = tmp_path / "flat"
    write_clip(root / "1010_IEO_HAP_LO.wav")
    (u,) = get_adapter("crema_d")(str(root))
    assert (u.speaker, u.label) == ("1010", "happy")
    write_clip(root / "1010_IEO_CAL_LO.wav")
    with pytest.raises(ValueError, match=r"1010_IEO_CAL_LO\.wav.*emotion code 'CAL'"):
        get_adapter("crema_d")(str(root))


def test_crema_d_bad_demographics_names_the_file(tmp_path):
    root = make_crema(tmp_path / "crema")
    (root / "VideoDemographics.csv").write_text("Actor,Gender\n1001,Male\n")
    with pytest.raises(ValueError, match=r"VideoDemographics\.csv.*\['ActorID', 'Sex'\]"):
        get_adapter("crema_d")(str(root))


# --------------------------------------------------------------------------- TESS
def test_tess_layout_and_labels(tmp_path):
    root = tmp_path / "tess"
    files = {
        "OAF_angry/OAF_back_angry.wav": "angry",
        "OAF_disgust/OAF_back_disgust.wav": "disgust",
        "OAF_Fear/OAF_back_fear.wav": "fearful",
        "OAF_happy/OAF_back_happy.wav": "happy",
        "OAF_neutral/OAF_back_neutral.wav": "neutral",
        "OAF_Pleasant_surprise/OAF_back_ps.wav": "surprised",
        "OAF_Sad/OAF_back_sad.wav": "sad",
        "YAF_pleasant_surprised/YAF_bath_ps.wav": "surprised",
        "YAF_pleasant_surprised/YAF_bean_pleasant_surprised.wav": "surprised",
        # The folder says angry, the name says sad: the name wins.
        "YAF_angry/YAF_chair_sad.wav": "sad",
    }
    for i, rel in enumerate(files):
        write_clip(root / rel, seed=i)
    utts = get_adapter("tess")(str(root))
    assert {Path(u.path).relative_to(root).as_posix(): u.label for u in utts} == files
    assert {u.speaker for u in utts} == {"OAF", "YAF"}
    assert {u.gender for u in utts} == {"female"}
    assert len({u.utt_id for u in utts}) == len(files)


@pytest.mark.parametrize(("rel", "message"), [
    ("OAF_angry/OAF_back_furious.wav", "emotion code 'furious'"),
    ("MAF_angry/MAF_back_angry.wav", "speaker code 'MAF'"),
    ("OAF_angry/back.wav", "not TESS"),
])
def test_tess_bad_names(tmp_path, rel, message):
    write_clip(tmp_path / "tess" / rel)
    with pytest.raises(ValueError, match=message) as err:
        get_adapter("tess")(str(tmp_path / "tess"))
    assert Path(rel).name in str(err.value)


# --------------------------------------------------------------------------- EMOVO
def test_emovo_layout_and_labels(tmp_path):
    root = tmp_path / "emovo"
    files = {"f1/rab-f1-b1.wav": "angry", "f1/gio-f1-b1.wav": "happy", "m2/neu-m2-l3.wav": "neutral",
             "m2/tri-m2-d1.wav": "sad", "f3/pau-f3-n5.wav": "fearful", "f3/dis-f3-b2.wav": "disgust",
             "m1/sor-m1-l1.wav": "surprised"}
    for i, rel in enumerate(files):
        write_clip(root / rel, seed=i)
    utts = get_adapter("emovo")(str(root))
    assert {Path(u.path).relative_to(root).as_posix(): u.label for u in utts} == files
    assert {u.speaker for u in utts} == {"f1", "m2", "f3", "m1"}
    assert {u.gender for u in utts if u.speaker.startswith("m")} == {"male"}
    assert len({u.utt_id for u in utts}) == len(files)
    write_clip(root / "f1" / "xyz-f1-b1.wav")
    with pytest.raises(ValueError, match="unknown EMOVO emotion code 'xyz'"):
        get_adapter("emovo")(str(root))


# --------------------------------------------------------------------------- SAVEE
SAVEE_CODES = {"a": "angry", "d": "disgust", "f": "fearful", "h": "happy", "n": "neutral",
               "sa": "sad", "su": "surprised"}


@pytest.mark.parametrize("layout", ["speaker_folders", "audiodata", "flat"])
def test_savee_layouts(tmp_path, layout):
    root = tmp_path / "savee"
    for s, spk in enumerate(("DC", "JE", "JK", "KL")):
        for code in SAVEE_CODES:
            name = f"{code}{s + 1:02d}.wav"
            rel = {"speaker_folders": f"{spk}/{name}", "audiodata": f"AudioData/{spk}/{name}",
                   "flat": f"ALL/{spk}_{name}"}[layout]
            write_clip(root / rel, speaker=2 * s + 1)
    utts = get_adapter("savee")(str(root))
    assert len(utts) == 4 * len(SAVEE_CODES)
    assert {u.speaker for u in utts} == {"DC", "JE", "JK", "KL"}
    assert {u.gender for u in utts} == {"male"}
    ids = by_id(utts)
    for code, emo in SAVEE_CODES.items():
        assert ids[f"JK_{code}03"].label == emo
    # Every layout yields the same ids, so a re-packaged copy gives the same manifest.
    assert sorted(ids) == sorted(f"{spk}_{c}{s + 1:02d}" for s, spk in enumerate(("DC", "JE", "JK", "KL"))
                                 for c in SAVEE_CODES)


@pytest.mark.parametrize(("rel", "message"), [
    ("DC/x01.wav", "emotion code 'x'"),
    ("ZZ/a01.wav", "speaker code 'ZZ'"),
    ("AB_sa01.wav", "speaker code 'AB'"),
    ("DC/a.wav", "not SAVEE"),
])
def test_savee_bad_names(tmp_path, rel, message):
    write_clip(tmp_path / "savee" / rel)
    with pytest.raises(ValueError, match=message) as err:
        get_adapter("savee")(str(tmp_path / "savee"))
    assert Path(rel).name in str(err.value)


# --------------------------------------------------------------------------- IEMOCAP
IEMOCAP_HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"


def iemocap_block(start: float, utt: str, code: str, vad: tuple[float, float, float]) -> str:
    v, a, d = vad
    return (f"[{start:.4f} - {start + 2:.4f}]\t{utt}\t{code}\t[{v:.4f}, {a:.4f}, {d:.4f}]\n"
            "C-E2:\tNeutral;\t()\nC-E3:\tNeutral;\t()\nA-E3:\tval 3; act 2; dom  2;\t()\n\n")


def make_iemocap(root: Path, lines: dict[str, list[tuple[str, str, tuple[float, float, float]]]],
                 write_audio: bool = True) -> Path:
    """`lines`: dialog -> [(utterance id, code, (v, a, d))]; writes labels and (optionally) wavs."""
    for dialog, utts in lines.items():
        session = root / f"Session{int(dialog[3:5])}"
        text = IEMOCAP_HEADER + "".join(iemocap_block(2.5 * i, u, c, vad) for i, (u, c, vad) in enumerate(utts))
        label_file = session / "dialog" / "EmoEvaluation" / f"{dialog}.txt"
        label_file.parent.mkdir(parents=True, exist_ok=True)
        label_file.write_text(text)
        # Annotator sub-folders and macOS forks must not be read as label files.
        (session / "dialog" / "EmoEvaluation" / "Categorical").mkdir(exist_ok=True)
        (session / "dialog" / "EmoEvaluation" / "Categorical" / f"{dialog}_e1_cat.txt").write_text(
            f"{utts[0][0]} :Anger; ()\n")
        (session / "dialog" / "EmoEvaluation" / f"._{dialog}.txt").write_bytes(b"\0\5\26\7")
        if write_audio:
            for i, (u, _c, _vad) in enumerate(utts):
                write_clip(session / "sentences" / "wav" / dialog / f"{u}.wav", speaker=i, seed=i)
    return root


IEMOCAP_LINES = {
    "Ses01F_impro01": [("Ses01F_impro01_F000", "neu", (2.5, 2.5, 2.5)),
                       ("Ses01F_impro01_M000", "fru", (2.0, 3.5, 3.5)),
                       ("Ses01F_impro01_F001", "xxx", (2.5, 3.0, 3.0))],
    "Ses01M_script01_1": [("Ses01M_script01_1_M000", "ang", (1.5, 4.0, 4.0)),
                          ("Ses01M_script01_1_F000", "exc", (4.0, 3.5, 3.0))],
    "Ses02F_impro02": [("Ses02F_impro02_F000", "hap", (4.5, 3.0, 3.0)),
                       ("Ses02F_impro02_M000", "sad", (1.5, 2.0, 2.0)),
                       ("Ses02F_impro02_M001", "oth", (3.0, 3.0, 3.0)),
                       ("Ses02F_impro02_F001", "sur", (3.5, 4.0, 3.0)),
                       ("Ses02F_impro02_M002", "fea", (2.0, 4.0, 2.0)),
                       ("Ses02F_impro02_F002", "dis", (2.0, 3.0, 3.0))],
}


def test_iemocap_labels_speakers_and_dimensions(tmp_path):
    root = make_iemocap(tmp_path / "iemocap", IEMOCAP_LINES)
    utts = by_id(get_adapter("iemocap")(str(root)))
    assert len(utts) == 11
    expected = {"neu": "neutral", "fru": "frustrated", "xxx": "other", "ang": "angry", "exc": "excited",
                "hap": "happy", "sad": "sad", "oth": "other", "sur": "surprised", "fea": "fearful",
                "dis": "disgust"}
    for dialog_utts in IEMOCAP_LINES.values():
        for utt, code, (v, a, d) in dialog_utts:
            u = utts[utt]
            assert u.label == expected[code] and u.label in CANONICAL_LABELS
            assert (u.valence, u.arousal, float(u.extra["dominance"])) == (v, a, d)
            assert u.extra["raw_label"] == code
            assert Path(u.path).is_file()
    # The speaker is the utterance's own speaker, not the one who led the dialog (Ses01F/Ses01M).
    assert (utts["Ses01F_impro01_M000"].speaker, utts["Ses01F_impro01_M000"].gender) == ("Ses01_M", "male")
    assert (utts["Ses01M_script01_1_F000"].speaker, utts["Ses01M_script01_1_F000"].gender) == ("Ses01_F", "female")
    assert {u.speaker for u in utts.values()} == {"Ses01_F", "Ses01_M", "Ses02_F", "Ses02_M"}
    assert Path(utts["Ses01M_script01_1_F000"].path).relative_to(root).as_posix() == (
        "Session1/sentences/wav/Ses01M_script01_1/Ses01M_script01_1_F000.wav")


def test_iemocap_missing_wav_still_listed_for_ingest_to_report(tmp_path):
    root = make_iemocap(tmp_path / "iemocap", {"Ses03F_impro01": [("Ses03F_impro01_F000", "neu", (3, 3, 3))]},
                        write_audio=False)
    (u,) = get_adapter("iemocap")(str(root))
    assert not Path(u.path).exists()


def test_iemocap_bad_lines_name_file_line_and_code(tmp_path):
    root = make_iemocap(tmp_path / "iemocap", {"Ses01F_impro01": [("Ses01F_impro01_F000", "joy", (3, 3, 3))]})
    with pytest.raises(ValueError, match=r"Ses01F_impro01\.txt: line 3: unknown IEMOCAP emotion code 'joy'"):
        get_adapter("iemocap")(str(root))
    root = make_iemocap(tmp_path / "iemocap2", {"Ses01F_impro01": [("Ses01F_impro01_X000", "neu", (3, 3, 3))]})
    with pytest.raises(ValueError, match="'Ses01F_impro01_X000'"):
        get_adapter("iemocap")(str(root))


def test_iemocap_without_label_files(tmp_path):
    write_clip(tmp_path / "iemocap" / "Session1" / "sentences" / "wav" / "d" / "Ses01F_impro01_F000.wav")
    with pytest.raises(FileNotFoundError, match="EmoEvaluation"):
        get_adapter("iemocap")(str(tmp_path / "iemocap"))


# --------------------------------------------------------------------------- CSV manifest
def test_csv_manifest_paths_synonyms_and_optional_columns(tmp_path):
    corpus = tmp_path / "mine"
    write_clip(corpus / "wav" / "a.wav")
    write_clip(corpus / "wav" / "sub" / "a.wav")
    outside = write_clip(tmp_path / "elsewhere" / "b.flac")
    (corpus / "labels.csv").write_text(
        "Path,Speaker,Emotion,Gender,Corpus,Valence,Arousal,notes\n"
        "wav/a.wav,s1,Anger,F,crema,0.25,0.75,loud\n"
        "wav/sub/a.wav,s1,HAPPINESS,m,,,,\n"
        f"{outside},s2,surprise,,,nan,,\n"
        "\n"
        "../mine/wav/a.wav,s3,neutral,female,,,,dup path is fine here\n")
    utts = get_adapter("csv")(str(corpus / "labels.csv"))
    assert [u.label for u in utts] == ["angry", "happy", "surprised", "neutral"]
    assert [u.path for u in utts] == [str(corpus / "wav" / "a.wav"), str(corpus / "wav" / "sub" / "a.wav"),
                                      str(outside), str(corpus / "wav" / "a.wav")]
    assert [u.utt_id for u in utts[:3]] == ["wav/a", "wav/sub/a", "b"]
    assert [u.speaker for u in utts] == ["crema/s1", "s1", "s2", "s3"]
    assert [u.gender for u in utts] == ["female", "male", "", "female"]
    assert (utts[0].valence, utts[0].arousal) == (0.25, 0.75)
    assert utts[1].valence is None and utts[2].valence is None


@pytest.mark.parametrize(("raw", "canonical"), [
    ("anger", "angry"), ("happiness", "happy"), ("sadness", "sad"), ("fear", "fearful"),
    ("surprise", "surprised"), ("disgusted", "disgust"), ("neutral", "neutral"), (" Calm ", "calm"),
    ("FEARFUL", "fearful"),
])
def test_csv_emotion_synonyms(raw, canonical):
    from affectflow.corpora.csv_manifest import normalise_emotion

    assert normalise_emotion(raw) == canonical


@pytest.mark.parametrize(("rows", "row", "field"), [
    ("a.wav,s1,angry,,\n,s1,happy,,\n", 2, "path"),
    ("a.wav,,angry,,\n", 1, "speaker"),
    ("a.wav,s1,,,\n", 1, "emotion"),
    ("a.wav,s1,angry,,\na.wav,s1,joyful,,\n", 2, "emotion"),
    ("a.wav,s1,angry,x,\n", 1, "gender"),
    ("a.wav,s1,angry,,high\n", 1, "valence"),
])
def test_csv_malformed_rows_name_file_row_and_field(tmp_path, rows, row, field):
    csv = tmp_path / "bad.csv"
    csv.write_text("path,speaker,emotion,gender,valence\n" + rows)
    with pytest.raises(ManifestError) as err:
        get_adapter("csv")(str(csv))
    msg = str(err.value)
    assert str(csv) in msg and f"row {row} " in msg and f"field '{field}'" in msg


def test_csv_missing_column_and_ragged_row(tmp_path):
    csv = tmp_path / "bad.csv"
    csv.write_text("path,emotion\na.wav,angry\n")
    with pytest.raises(ManifestError, match=r"bad\.csv: header lacks required columns \['speaker'\]"):
        get_adapter("csv")(str(csv))
    csv.write_text("path,speaker,emotion\na.wav,s1,angry\nb.wav,s1,angry,extra\n")
    with pytest.raises(ManifestError, match=r"bad\.csv: row 2 \(line 3\): 4 fields, header has 3"):
        get_adapter("csv")(str(csv))
